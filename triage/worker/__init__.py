"""The worker: consumer loop, offset tracker, process pool and ordered shutdown."""
