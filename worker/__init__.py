"""Celery workers for Styledrop: the train and generate tasks, the adapter cache and the `styledrop` CLI.

Importing this package does not import Celery, torch or touch CUDA; each module imports what it needs.
"""
