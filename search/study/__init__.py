"""Where a study lives: its storage, opened once per process, and what keeps it sound when several sweep processes
share it and some of them die or lose their database.

- `storage`: the journal file or database URL a study is in (`open_storage`, `storage_location`);
- `retry`: storage calls that survive a database dropping its connections (`RetryingRDBStorage`);
- `lock`: check-then-write steps run one process at a time (`study_lock`);
- `liveness`: heartbeats, and the RUNNING trials whose sweep process is gone (`fail_orphans`, `fail_stale_trials`).

How a trial's job finds its trial in the study is the sweeper's (hydra_plugins/lighttrack_sweeper/jobs.py).
"""
from .liveness import (HEARTBEAT_ATTR, Beating, Heartbeat, HeartbeatJournalStorage, RetryStaleTrial, fail_orphans,
                       fail_stale_trials, heartbeat, owner_attrs, retried, retry_of, trial_id)
from .lock import StudyLock, is_lockable, study_lock
from .retry import (CLAIMED_ATTR, CREATED_ATTR, DB_RETRY_SECONDS, RetryingRDBStorage, is_connection_error,
                    recently_disconnected, retry_call)
from .storage import StorageError, is_url, open_storage, storage_location

__all__ = ["Beating", "CLAIMED_ATTR", "CREATED_ATTR", "DB_RETRY_SECONDS", "HEARTBEAT_ATTR", "Heartbeat",
           "HeartbeatJournalStorage", "RetryStaleTrial", "RetryingRDBStorage", "StorageError", "StudyLock",
           "fail_orphans", "fail_stale_trials", "heartbeat", "is_connection_error", "is_lockable", "is_url",
           "open_storage", "owner_attrs", "recently_disconnected", "retried", "retry_call", "retry_of",
           "storage_location", "study_lock", "trial_id"]
