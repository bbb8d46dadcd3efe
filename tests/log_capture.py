"""Test helper: the messages of a logger, whether or not Detectron2's setup_logger stopped propagation."""

import contextlib
import io
import logging


@contextlib.contextmanager
def captured_log(name):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
