"""JSON logs on stdout, each line carrying the request id, with every configured secret removed."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

REDACTED = "[REDACTED]"
# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON line.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's terminal-coloured copy of the message
}


class SecretRedactor:
    """Replaces known secret values in text; longest first so that a secret containing another is fully hidden."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also hide these values from now on (values shorter than 4 characters would garble normal text)."""
        merged = set(self._secrets) | {secret for secret in secrets if len(secret) >= 4}
        self._secrets = sorted(merged, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; the redactor runs over the final line so no field can leak."""

    def __init__(self, redactor: SecretRedactor) -> None:
        super().__init__()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["requestId"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._redactor(json.dumps(entry, default=str))


class _JsonStdoutHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]  # generic in typeshed only
    """Marks the handler `configure_logging` installs, so a second call replaces it instead of doubling lines."""


def configure_logging(level: str, secrets: Iterable[str]) -> SecretRedactor:
    """Send our logs and uvicorn's through one JSON handler on stdout; uvicorn's access log is replaced by ours."""
    redactor = SecretRedactor(secrets)
    handler = _JsonStdoutHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(redactor))
    root = logging.getLogger()
    # Replace only a handler installed by an earlier call (tests build many apps); leave others, e.g. pytest's.
    root.handlers[:] = [existing for existing in root.handlers if not isinstance(existing, _JsonStdoutHandler)]
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Novita call; the client logs what matters
    return redactor
