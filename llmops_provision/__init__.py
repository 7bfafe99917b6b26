"""llmops-provision: declarative provisioner for the OCR serving platform's five server types."""

__version__ = "0.1.0"
