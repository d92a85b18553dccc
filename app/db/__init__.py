"""The results store: SQLAlchemy 2.0 models, engine and queries."""
