"""Reference OCR application: CRNN recogniser, page OCR, inference API and web UI."""
