"""The Celery broker, through Celery's own remote control: which queues each worker consumes, and
`cancel_consumer` / `add_consumer` to one worker (drain)."""
