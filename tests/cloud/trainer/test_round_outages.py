"""A round that fails on an outage (Redis, a full blob disk) is one warning line and a
rejected round, not a traceback; any other error keeps its traceback."""

from __future__ import annotations

import errno
import logging
import time
from concurrent.futures import Future

import pytest
import redis

from cloud.trainer.loop import Trainer
from shared.messages import TrainerStatus

pytestmark = pytest.mark.cloud


def collect(error: BaseException) -> Trainer:
    """``Trainer._collect`` of a round that raised ``error`` (the round itself is
    covered by test_rounds.py; here only how its failure is reported)."""
    trainer = object.__new__(Trainer)
    future: Future[object] = Future()
    future.set_exception(error)
    trainer._round = future  # type: ignore[assignment]
    trainer.status = TrainerStatus(model="digits", consumer="t")
    trainer._collect()
    return trainer


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        redis.TimeoutError("Timeout reading from 127.0.0.1:6379"),
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    ],
)
def test_a_round_failed_on_an_outage_is_one_line(
    caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    with caplog.at_level(logging.WARNING, logger="cloud.trainer.loop"):
        trainer = collect(error)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "a later round retries" in record.getMessage()
    assert trainer.status.rounds_rejected == 1
    assert trainer.status.last_round["error"].startswith(type(error).__name__)


def test_a_round_failed_on_a_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cloud.trainer.loop"):
        collect(OSError(errno.ENOENT, "No such file"))
        collect(ValueError("a bug"))
    assert [r.exc_info is not None for r in caplog.records] == [True, True]


@pytest.mark.timeout(180)
def test_a_trainer_rides_out_commands_its_redis_refuses(
    make_settings, digits, redis_client, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that refuses a command (here every write: ``min-replicas-to-write 1`` on a
    server with no replica answers NOREPLICAS, as a cluster mid-failover or a disk that
    stops writes would answer with their own refusal): the trainer logs one line each
    time and tries again, and starts once the refusal is gone."""
    import threading

    from tests.cloud.conftest import FAST_TRAINER

    trainer = Trainer(make_settings(**{**FAST_TRAINER, "bootstrap_epochs": 1}), dataset=digits)
    stop = threading.Event()
    redis_client.config_set("min-replicas-to-write", 1)
    try:
        with caplog.at_level(logging.WARNING, logger="cloud.trainer.loop"):
            thread = threading.Thread(target=trainer.run, args=(stop,))
            thread.start()
            time.sleep(1.5)
            refused = [r for r in caplog.records if "refused a command" in r.getMessage()]
            assert refused and all(r.exc_info is None for r in refused)
            assert "NOREPLICAS" in refused[0].getMessage()
            assert thread.is_alive() and trainer.publisher.latest("digits") is None
    finally:
        redis_client.config_set("min-replicas-to-write", 0)
    deadline = time.monotonic() + 120
    while trainer.publisher.latest("digits") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    thread.join(60)
    assert trainer.publisher.latest("digits") is not None  # it bootstrapped v1 after all
