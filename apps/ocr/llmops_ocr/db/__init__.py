"""Database layer: SQLAlchemy 2 models, engines, packaged Alembic migrations, hashing helpers."""

from llmops_ocr.db.engine import make_engine, make_sessionmaker, session_scope, url_from_config
from llmops_ocr.db.migrate import current_revision, head_revision, migrate
from llmops_ocr.db.models import (
    ApiKey,
    Base,
    Deployment,
    LoginFailure,
    Model,
    ModelVersion,
    Request,
    Upload,
    User,
    WebSession,
)
from llmops_ocr.db.security import (
    generate_api_key,
    hash_api_key,
    hash_password,
    verify_password,
)

__all__ = [
    "ApiKey",
    "Base",
    "Deployment",
    "LoginFailure",
    "Model",
    "ModelVersion",
    "Request",
    "Upload",
    "User",
    "WebSession",
    "current_revision",
    "generate_api_key",
    "hash_api_key",
    "hash_password",
    "head_revision",
    "make_engine",
    "make_sessionmaker",
    "migrate",
    "session_scope",
    "url_from_config",
    "verify_password",
]
