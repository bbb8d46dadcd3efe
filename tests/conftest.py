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


@pytest.fixture
def toy_training_opts():
    """Options of a short training of the toy supernet classifier (configs/Toy/cls_supernet.yaml): 40
    iterations of batch 8, a checkpoint every 10, random paths from iteration 20 on; with the config's
    random-resized crops, colour jitter and flips, every source of randomness a training step has. No
    evaluation, no BN recalibration."""
    return [
        "SOLVER.MAX_ITER",
        "40",
        "SOLVER.CHECKPOINT_PERIOD",
        "10",
        "SOLVER.IMS_PER_BATCH",
        "8",
        "SOLVER.WARMUP_ITERS",
        "5",
        "DETNAS.SAMPLER.PROGRESSIVE_ITERS",
        "20",
        "DETNAS.BN_RECALIB.IMAGES",
        "0",
        "TEST.EVAL_PERIOD",
        "0",
        "DATASETS.TEST",
        "()",
    ]


@pytest.fixture
def toy_retinanet_opts():
    """Options narrowing a RetinaNet config to the toy shapes, on CPU: backbone width 0.25, plain BN,
    an FPN of 32 channels without norm, 5 classes."""
    return [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.DETNAS.WIDTH_MULT",
        "0.25",
        "MODEL.DETNAS.NORM",
        "BN",
        "MODEL.FPN.NORM",
        "",
        "MODEL.FPN.OUT_CHANNELS",
        "32",
        "MODEL.RETINANET.NUM_CLASSES",
        "5",
    ]
