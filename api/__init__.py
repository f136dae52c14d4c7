"""The HTTP API: FastAPI routes, auth, schemas, admin views and metrics. Imports storage/ and the engine's
torch-free contracts (`trainer.contracts`) only (plus Celery to send tasks by name); never torch, the rest of
trainer/, or worker/. Run it with `uvicorn api.main:create_app --factory`.

Layout: `main.py` builds the app; `routes/` are thin handlers; `services/` hold what the routes do; `http/` is the
HTTP plumbing every route shares (dependencies, errors, guards, headers, security, streams, metrics, docs);
`schemas.py` the request and response models."""
