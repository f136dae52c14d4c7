"""The HTTP API: FastAPI routes, auth, schemas, admin views and metrics. Imports storage/ and the engine's
torch-free contracts (`trainer.contracts`) only (plus Celery to send tasks by name); never torch, the rest of
trainer/, or worker/. Run it with `uvicorn api.main:create_app --factory`."""
