#!/usr/bin/env python
"""Make tests/fixtures/official_parity.pt with Megvii's own DetNAS network code (run by hand, once).

The official networks are plain PyTorch; this script imports them from checkouts given on the command line
(nothing of theirs is copied into detnas-d2) and fills them with `tests/fixtures/parity_weights.seeded_tensor
(seed, key, shape)`, so the fixture holds no weights: only the keys and shapes of their state dicts, the seed
and their outputs on seeded inputs. tests/test_checkpoint_formats.py regenerates the same state dicts,
loads them through MODEL.WEIGHTS' path and compares. Cases (eval mode, batch 1):

- ``subnet_300M``, ``subnet_1.3G``, ``subnet_3.8G``: ShuffleNet-Series ``DetNAS/network.py``
  ``ShuffleNetV2DetNAS(model_size='COCO_FPN_300M' | 'COCO_FPN_1.3G' | 'COCO_FPN_3.8G')`` at full size, with
  its own arch: logits on a 224x224 input (their ``AvgPool2d(7)`` needs 7x7 maps) and the four stage
  outputs (the last unit of every stage, as the DetNAS detector's backbone returns them) on 32x32;
- ``supernet_300M``: DetNAS ``Supernet-ImageNet/detnasnet.py`` ``ShuffleNetV2DetNAS('DETNAS-300M')`` run on
  one seeded path (``forward(x, rngs)``): the same outputs.

    git clone https://github.com/megvii-model/ShuffleNet-Series   # DetNAS/network.py, DetNAS/blocks.py
    git clone https://github.com/megvii-model/DetNAS               # Supernet-ImageNet/
    python tools/make_official_fixtures.py --shufflenet-series ShuffleNet-Series --detnas DetNAS
"""

import argparse
import importlib.util
import os
import random
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEED = 16
LOGITS_INPUT = (1, 3, 224, 224)
STAGES_INPUT = (1, 3, 32, 32)
SUBNETS = {
    "subnet_300M": "COCO_FPN_300M",
    "subnet_1.3G": "COCO_FPN_1.3G",
    "subnet_3.8G": "COCO_FPN_3.8G",
}


def _load(path, name, package=None):
    """Import the file `path` as module `name` (inside `package` for their relative imports)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if package:
        module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The seeded weights the tests regenerate (plain torch, loaded by its path: this tool runs with the
# official code, where detnas-d2 need not be installed).
parity_weights = _load(
    os.path.join(ROOT, "tests", "fixtures", "parity_weights.py"), "parity_weights"
)
seeded_input, seeded_state_dict = parity_weights.seeded_input, parity_weights.seeded_state_dict


def _package(name, folder):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # an empty package: their folder has no __init__.py
    return module


def _seed(net):
    state = net.state_dict()
    keys, shapes = list(state), [tuple(v.shape) for v in state.values()]
    net.load_state_dict(seeded_state_dict(SEED, keys, shapes))
    return keys, shapes


def _outputs(net, stage_depths, forward, run_layer, name):
    """Logits on 224x224 and the stage outputs on 32x32, both seeded inputs."""
    ends = [sum(stage_depths[: s + 1]) - 1 for s in range(len(stage_depths))]
    with torch.no_grad():
        logits = forward(seeded_input(SEED, name + ":logits", LOGITS_INPUT))
        x = net.first_conv(seeded_input(SEED, name + ":stages", STAGES_INPUT))
        stages = []
        for i in range(len(net.features)):
            x = run_layer(i, x)
            if i in ends:
                stages.append(x.clone())
    return {"logits": logits, **{f"stage{s}": out for s, out in enumerate(stages)}}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shufflenet-series", required=True, help="checkout of megvii-model/ShuffleNet-Series"
    )
    parser.add_argument("--detnas", required=True, help="checkout of megvii-model/DetNAS")
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "tests", "fixtures", "official_parity.pt")
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)  # their constructors initialise randomly; every tensor is then overwritten

    folder = os.path.join(args.shufflenet_series, "DetNAS")
    _load(os.path.join(folder, "blocks.py"), "blocks")  # network.py does `from blocks import ...`
    network = _load(os.path.join(folder, "network.py"), "official_detnas_network")
    cases = {}
    for case, size in SUBNETS.items():
        net = network.ShuffleNetV2DetNAS(n_class=1000, model_size=size).eval()
        keys, shapes = _seed(net)
        depths = [8, 8, 16, 8] if len(net.features) == 40 else [4, 4, 8, 4]
        cases[case] = {
            "model_size": size,
            "source": "ShuffleNet-Series/DetNAS/network.py",
            "keys": keys,
            "shapes": shapes,
            "outputs": _outputs(net, depths, net, lambda i, x: net.features[i](x), case),
        }
    del sys.modules["blocks"]

    folder = os.path.join(args.detnas, "Supernet-ImageNet")
    _package("official_supernet", folder)
    _load(
        os.path.join(folder, "shuffle_blocks.py"),
        "official_supernet.shuffle_blocks",
        "official_supernet",
    )
    detnasnet = _load(
        os.path.join(folder, "detnasnet.py"), "official_supernet.detnasnet", "official_supernet"
    )
    net = detnasnet.ShuffleNetV2DetNAS("DETNAS-300M").eval()
    keys, shapes = _seed(net)
    path = tuple(random.Random(SEED).randrange(4) for _ in range(20))
    outputs = _outputs(
        net,
        [4, 4, 8, 4],
        lambda x: net(x, rngs=path),
        lambda i, x: net.features[i][path[i]](x),
        "supernet_300M",
    )
    cases["supernet_300M"] = {
        "model_size": "DETNAS-300M",
        "source": "DetNAS/Supernet-ImageNet/detnasnet.py",
        "keys": keys,
        "shapes": shapes,
        "path": list(path),
        "outputs": outputs,
    }

    torch.save(
        {"seed": SEED, "logits_input": LOGITS_INPUT, "stages_input": STAGES_INPUT, "cases": cases},
        args.output,
    )
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB): {', '.join(cases)}")


if __name__ == "__main__":
    main()
