import logging

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' convs are tiny: one thread runs them fastest, and steadily when processes share cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _drop_handlers_of_closed_streams():
    """A logger set up while an earlier test captured the output keeps a handler on that test's
    stream, closed since: its records would print "--- Logging error ---" into a later test's
    captured stderr. Drop such handlers before each test."""
    loggers = [logging.getLogger()] + [
        log for log in logging.Logger.manager.loggerDict.values() if isinstance(log, logging.Logger)
    ]
    for log in loggers:
        for handler in list(log.handlers):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                log.removeHandler(handler)
    yield
