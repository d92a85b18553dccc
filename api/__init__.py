"""The FastAPI adapter: routes, schemas, auth and hooks over ``app``."""
