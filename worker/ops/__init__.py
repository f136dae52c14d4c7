"""Running the service rather than doing its work: the supervisor that `styledrop up` runs the processes under
(`supervisor.py`), the reconciler that re-sends lost messages and requeues the jobs of dead workers
(`reconciler.py`), and webhook delivery, which runs beside the reconciler (`webhooks.py`)."""
