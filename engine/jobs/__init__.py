"""Background jobs: the queue (start, cancel, list) and the worker process that runs one."""
