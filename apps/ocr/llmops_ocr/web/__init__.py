"""The OCR web app (Flask): ``llmops_ocr.web.app:create_app`` is the WSGI factory."""
