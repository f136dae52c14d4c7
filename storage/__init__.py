"""The shared core of the service: what api/ and worker/ both stand on.

Settings (`settings`), the state vocabulary (`states`), ORM tables (`models`) and their Alembic migrations
(`migrations/`), sessions (`db`), the job and generation state machines and the queries they share (`jobs`),
task routes and broker config (`broker`), sending work (`dispatch`), users and API keys (`users`), the blob store
(`blobs`) and upload checking (`images`). Import submodules directly; this package imports nothing heavy at
import time, and nothing from api/, worker/ or trainer/ beyond the engine's torch-free contracts
(`trainer.contracts`: limits, defaults, prompt rules).
"""
