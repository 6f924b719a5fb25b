"""A task that kills the worker process running it, loaded only by the poison test's worker
(``-I tests.poison_tasks``)."""

import os
import signal

from worker.app import app
from worker.tasks import NewsmonTask


@app.task(base=NewsmonTask, name="newsmon.test.kill_worker")
def kill_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
