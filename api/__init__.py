"""The HTTP API: FastAPI routes, auth, schemas, admin views and metrics. Imports storage/ only (plus Celery to
send tasks by name); never torch, trainer/ or worker/. Run it with `uvicorn api.main:create_app --factory`."""
