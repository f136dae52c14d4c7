"""Persistence for Styledrop: ORM tables and sessions (`db`, `models`), the job state machine (`jobs`), users
and API keys (`users`), the blob store (`blobs`) and upload checking (`images`). Import submodules directly;
this package imports nothing heavy at import time."""
