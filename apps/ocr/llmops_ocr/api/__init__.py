"""The OCR inference API: FastAPI app (``app.create_app``), dynamic batching, auth, metrics.

Run it with ``python -m llmops_ocr.api.serve`` (gunicorn + uvicorn workers, config from
``$LLMOPS_CONFIG`` or /etc/llmops/api.json).
"""
