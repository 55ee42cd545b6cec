"""Alembic migrations of the newsletter's schema."""
