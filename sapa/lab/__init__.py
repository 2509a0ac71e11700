"""The book's laboratory, built on the :mod:`sapa` library (which never imports it).

Its modules (``pip install sapa[book]`` brings numpy, tqdm, matplotlib and safetensors):

* :mod:`sapa.lab.data`: the procedural textures and texture-statistics (weak-guide) tasks, folder
  and Oxford-Pet datasets;
* :mod:`sapa.lab.probes`: per-pixel linear probes of encoder features, ``python -m sapa.lab.probes``;
* :mod:`sapa.lab.models`: the small segmenter (U-Net or SegFormer-like head) with any upsampler;
* :mod:`sapa.lab.train`: training (resumable, DDP-ready), ``python -m sapa.lab.train``;
* :mod:`sapa.lab.sweep`: the stored comparisons, ``python -m sapa.lab.sweep --print-commands``;
* :mod:`sapa.lab.mechanism`: the controlled mechanism experiment, ``python -m sapa.lab.mechanism``;
* :mod:`sapa.lab.hf`: the trained SegFormer toy experiment of chapter 9;
* :mod:`sapa.lab.steps`: training steps of the book's model per upsampler, ``python -m sapa.lab.steps``;
* :mod:`sapa.lab.comparison`, :mod:`sapa.lab.ablations`: the analyses of chapters 6 and 8 (and the preface);
* :mod:`sapa.lab.weak_guide`: the textures and weak-guide tasks compared, the prediction judged;
* :mod:`sapa.lab.metrics`, :mod:`sapa.lab.stats`: segmentation metrics, paired intervals, Holm;
* :mod:`sapa.lab.results`, :mod:`sapa.lab.checkpoint`: the stored results and models, training
  checkpoints (loading never runs code);
* :mod:`sapa.lab.plotting`, :mod:`sapa.lab.profiles`: the book's figures and its quick/full profile.

Submodules are imported on first attribute access (``sapa.lab.stats.paired_differences``).
"""
import importlib

_SUBMODULES = ("data", "models", "train", "sweep", "mechanism", "hf", "steps", "comparison", "ablations", "metrics",
               "stats", "results", "probes", "weak_guide",
               "checkpoint", "plotting", "profiles")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sapa.lab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
