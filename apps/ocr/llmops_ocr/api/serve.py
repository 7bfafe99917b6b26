"""``python -m llmops_ocr.api.serve [gunicorn options]``: run the API under gunicorn.

Equivalent to ``gunicorn -c python:llmops_ocr.api.gunicorn_conf [options]``; options such as
``--bind 10.0.0.5:8000`` or ``--workers 4`` override the config.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:llmops_ocr.api.gunicorn_conf", *args]
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    main()
