"""Stored results of the book: where they live, and the trained models kept next to them.

The chapters read the files of ``<results>`` (``book/results`` of a checkout, or
``$SAPA_RESULTS_DIR``) through :func:`stored_file`, which, without a checkout (the package
installed by pip, e.g. on Colab), fetches a file from the published repository at the git ref
``$SAPA_RESULTS_REF`` (default ``main``; pin a tag or commit for results that never change) and
revalidates its cached copy once per process. A file that cannot be had raises
:class:`StoredFileUnavailable` saying whether it is missing (not computed yet) or could not be
downloaded (and why); :func:`unavailable_sentence` words that for a reader:

* ``main.csv`` (chapter 6): the main comparison of :mod:`sapa.lab.sweep` (every upsampler and the
  parameter-matched control, five seeds, the stored task ``sapa.lab.sweep.STORED_TASK``);
* ``table6.csv`` (chapter 8): the ablations of the paper's Table 6 and the padding;
* ``mechanism.csv`` (chapter 7): the controlled experiment of :mod:`sapa.lab.mechanism`;
* ``statistics.csv`` ("When does similarity help?"): the weak-guide task's comparison
  (:class:`sapa.lab.data.TextureStatistics`), and ``probes.json``, the linear probes of
  :mod:`sapa.lab.probes` that measure how weak its high-resolution guide is;
* the JSON beside each CSV (every invocation's ``command``, ``seconds``, ``date``,
  ``machine``); ``python -m sapa.lab.sweep --print-commands`` prints the commands;
* a few trained models exported from the sweep's run folders:
  ``models/main_<upsampler>_s0.safetensors`` (the weights) with
  ``models/main_<upsampler>_s0.json`` (the training config) beside it::

    from sapa.lab.results import export_model, load_model, stored_file
    export_model("runs/sweep/<run>", "book/results/models/main_sapa-b_s0.safetensors")
    model = load_model(stored_file("models/main_sapa-b_s0.safetensors"))  # a Segmenter, eval mode

The earlier 32 x 32 results (``segmentation.csv``, ``ablations.csv`` and their models) are
superseded and no longer stored (``book/results/README.md``).

The weights are a float32 state dict (integer buffers keep their dtype); the JSON holds the
TrainConfig as a dict plus ``epochs_trained``. No optimizer state, no history, so the pair is a
fraction of the checkpoint's size. Loading never runs code: safetensors and JSON hold data
only, and the run's ``last.pt`` is read with ``weights_only=True`` (:mod:`sapa.lab.checkpoint`).
A file that is damaged, not a stored model, or of another model raises
:class:`sapa.lab.checkpoint.CheckpointError` naming it.

:func:`load_state_dict_file` reads any state dict (``.safetensors``, or ``.pth``/``.pt`` with
``weights_only=True``), e.g. an official checkpoint.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .checkpoint import (CheckpointError, describe_mismatch, load_model_file, load_state_dict_file,
                         load_training_checkpoint, model_file_paths, read_model_config, save_model_file)

__all__ = ["ENV_VAR", "REF_VAR", "RAW_URL", "repo_root", "results_dir", "results_ref", "stored_file",
           "StoredFileUnavailable", "unavailable_sentence", "export_model", "load_model", "model_config",
           "load_state_dict_file", "CheckpointError"]

#: environment variable that overrides the results folder
ENV_VAR = "SAPA_RESULTS_DIR"

PathLike = Union[str, os.PathLike]


def _is_this_repository(folder: Path) -> bool:
    """True for a checkout of this repository: the book's ``_config.yml``, the package's
    ``pyproject.toml`` naming ``sapa`` and the ``book/results`` folder (any other Jupyter Book or
    Jekyll project has a ``_config.yml`` too)."""
    if not ((folder / "_config.yml").is_file() and (folder / "book" / "results").is_dir()
            and (folder / "sapa" / "__init__.py").is_file()):
        return False
    try:
        text = (folder / "pyproject.toml").read_text()
    except OSError:
        return False
    return re.search(r'(?m)^name\s*=\s*"sapa"\s*$', text) is not None


def repo_root(start: Optional[PathLike] = None) -> Optional[Path]:
    """The root of a checkout of this repository: the first folder, from ``start`` (default:
    the cwd) upwards, then from this package's folder upwards, that is this repository (its
    book's ``_config.yml``, ``book/results`` and a ``pyproject.toml`` of the package ``sapa``).

    Returns None when there is none (e.g. the package installed from a wheel on Colab).
    """
    starts = [Path(start) if start is not None else Path.cwd(), Path(__file__).resolve().parent]
    for s in starts:
        s = s.resolve()
        for d in (s, *s.parents):
            if _is_this_repository(d):
                return d
    return None


def results_dir(start: Optional[PathLike] = None) -> Optional[Path]:
    """``$SAPA_RESULTS_DIR`` if set, else ``<repo root>/book/results``; None without a checkout."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root(start)
    return root / "book" / "results" if root is not None else None


#: the git ref (branch, tag or commit) whose stored results are fetched without a checkout;
#: ``$SAPA_RESULTS_REF`` pins another one (e.g. the commit of the package you installed)
REF_VAR = "SAPA_RESULTS_REF"
DEFAULT_REF = "main"
#: where the stored results of the published repository are read from without a checkout
#: (e.g. on Colab, where the package is pip-installed): ``RAW_URL.format(ref=...) + "main.csv"``
RAW_URL = "https://raw.githubusercontent.com/sapa-book/sapa/{ref}/book/results/"


def results_ref() -> str:
    """The git ref of the fetched results: ``$SAPA_RESULTS_REF`` or ``"main"``."""
    ref = os.environ.get(REF_VAR, "").strip() or DEFAULT_REF
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", ref) or ".." in ref:
        raise ValueError(f"${REF_VAR} must be a git branch, tag or commit, got {ref!r}")
    return ref


class StoredFileUnavailable(FileNotFoundError):
    """A stored result that cannot be had. ``reason`` is ``"missing"`` (the checkout, or the
    published repository, has no such file: it has not been computed yet) or ``"download"``
    (it could not be downloaded: ``detail`` says why, e.g. no network)."""

    def __init__(self, name: str, reason: str, detail: str, where: str):
        self.name, self.reason, self.detail, self.where = name, reason, detail, where
        if reason == "missing":
            msg = f"stored result {name!r} not found in {where}"
        else:
            msg = f"stored result {name!r} could not be downloaded from {where} ({detail})"
        super().__init__(msg)


def unavailable_sentence(err: BaseException, command: Optional[str] = None) -> str:
    """One Markdown sentence for a reader: why a stored result is not shown, and what to do."""
    name = getattr(err, "name", None) or "the stored result"
    if getattr(err, "reason", None) == "download":
        return (f"The stored result `{name}` could not be downloaded ({err.detail}): without a checkout of "
                f"the repository the book fetches its stored results from `{err.where}`. Connect to the "
                f"internet and rerun the cell, or run the notebook inside a clone of the repository.")
    tail = f" `{command}` computes it (resumable)." if command else ""
    return f"The stored result `{name}` is not there yet: it has not been computed.{tail}"


def _cache_dir(ref: Optional[str] = None) -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sapa" / "results" / (ref or results_ref()).replace("/", "_")


#: files revalidated against the remote in this process (a notebook fetches each once)
_CHECKED: Dict[str, Path] = {}


def _fetch(name: str, url: str, cached: Path) -> Path:
    """Download ``url`` into ``cached``, revalidating an existing copy (ETag/Last-Modified):
    a changed remote file replaces it, an unreachable remote keeps it."""
    import urllib.error
    import urllib.request

    meta_path = cached.with_name(cached.name + ".meta.json")
    meta = {}
    if cached.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
    req = urllib.request.Request(url)
    if cached.is_file():
        if meta.get("etag"):
            req.add_header("If-None-Match", meta["etag"])
        if meta.get("last_modified"):
            req.add_header("If-Modified-Since", meta["last_modified"])
    tmp = cached.with_name(cached.name + ".part")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - fixed https URL
            data = r.read()
            headers = {"etag": r.headers.get("ETag"), "last_modified": r.headers.get("Last-Modified")}
    except urllib.error.HTTPError as e:
        if e.code == 304 and cached.is_file():
            return cached
        if e.code == 404:
            raise StoredFileUnavailable(name, "missing", "HTTP 404", url) from None
        if cached.is_file():
            return cached
        raise StoredFileUnavailable(name, "download", f"HTTP {e.code} {e.reason}", url) from None
    except (OSError, ValueError) as e:  # no network, DNS, timeout, a bad URL
        if cached.is_file():
            return cached  # the copy fetched earlier (it could not be checked against the remote)
        detail = getattr(e, "reason", None) or e
        raise StoredFileUnavailable(name, "download", f"{type(e).__name__}: {detail}", url) from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    os.replace(tmp, cached)
    meta_tmp = meta_path.with_name(meta_path.name + ".part")
    meta_tmp.write_text(json.dumps({k: v for k, v in headers.items() if v}))
    os.replace(meta_tmp, meta_path)
    return cached


def stored_file(name: str, start: Optional[PathLike] = None, download: Optional[bool] = None) -> Path:
    """The path of the stored result ``name`` (e.g. ``"main.csv"``, ``"models/x.safetensors"``).

    Looks in :func:`results_dir` (``$SAPA_RESULTS_DIR`` or the checkout's ``book/results``).
    Without a checkout (the package installed by pip, e.g. on Colab) the file is fetched from
    the published repository at :func:`results_ref` (``$SAPA_RESULTS_REF``, default ``main``)
    into ``~/.cache/sapa/results/<ref>``; a cached copy is revalidated once per process (a
    changed remote file replaces it; without network the copy is used). ``download=False``
    never fetches; the default fetches only when there is no checkout.

    Raises:
        ValueError: ``name`` is not a relative name inside the results folder.
        StoredFileUnavailable: (a FileNotFoundError) with ``reason`` ``"missing"`` (not in the
            checkout, or HTTP 404: not computed yet) or ``"download"`` (the fetch failed, and why).
    """
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"name must be a relative file name inside the results folder, got {name!r}")
    local = results_dir(start)
    if local is not None and (local / name).is_file():
        return local / name
    if download is None:
        download = local is None
    ref = results_ref()
    cached = _cache_dir(ref) / name
    if not download:
        if cached.is_file():
            return cached
        raise StoredFileUnavailable(name, "missing", "", str(local or "no results folder (no checkout)"))
    url = RAW_URL.format(ref=ref) + name
    if _CHECKED.get(url) == cached and cached.is_file():
        return cached
    path = _fetch(name, url, cached)
    _CHECKED[url] = path
    return path


def export_model(run_dir: PathLike, dest: PathLike) -> Path:
    """Store the model of a training run (``run_dir/last.pt``) as ``dest`` (a ``.safetensors``
    file of weights) and its training config as JSON beside it (``dest`` with ``.json``).

    The state dict is stored in float32 on the CPU (integer buffers such as BatchNorm's
    ``num_batches_tracked`` keep their dtype). Each file is written atomically. Returns the
    ``.safetensors`` path.
    """
    dest = Path(dest)
    if dest.suffix != ".safetensors":
        raise ValueError(f"dest must name a .safetensors file (its .json config goes beside it), got {dest}")
    src = Path(run_dir) / "last.pt"
    if not src.is_file():
        raise FileNotFoundError(f"no checkpoint {src}: train the run first")
    state = load_training_checkpoint(src)
    sd = {k: (v.detach().to(torch.float32) if v.is_floating_point() else v.detach()).clone()
          for k, v in state["model"].items()}
    config = dict(state["config"])
    config["epochs_trained"] = int(state["epoch"])
    return save_model_file(dest, sd, config)


def _num_classes(config: Dict[str, Any], state_dict: Dict[str, torch.Tensor]) -> int:
    if "head.weight" in state_dict:
        return int(state_dict["head.weight"].shape[0])
    if config.get("num_classes"):
        return int(config["num_classes"])
    from .data import SYNTHETIC_CLASSES

    return len(SYNTHETIC_CLASSES)


def model_config(path: PathLike) -> Dict[str, Any]:
    """The training config stored beside an exported model (a dict of TrainConfig fields plus
    ``epochs_trained``); ``path`` names the ``.safetensors`` file or its ``.json``."""
    return dict(read_model_config(path))


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """Rebuild the :class:`sapa.lab.models.Segmenter` of an exported file, in eval mode.

    The architecture comes from the stored config (``upsampler``, ``width``, ``stages``,
    ``upsampler_options``, ``skip_fusion``); the class count and the decoder width from the
    head's weight (so configs written before ``decoder_width`` existed load too). The
    config is attached as ``model.config``. ``path`` names the ``.safetensors`` file (or its
    ``.json``). Raises :class:`CheckpointError` naming the file when it is damaged, not a
    stored sapa model, or holds weights that do not fit the model its config describes.
    """
    from .models import Segmenter

    weights, _ = model_file_paths(path)
    sd, cfg = load_model_file(path)
    if not isinstance(cfg.get("upsampler"), str) or not isinstance(cfg.get("width"), int):
        raise CheckpointError(f"{path}: its config lacks 'upsampler' or 'width'; expected the config "
                              f"of a Segmenter trained by sapa.lab.train")
    try:
        decoder_width = int(sd["head.weight"].shape[1]) if "head.weight" in sd else cfg.get("decoder_width")
        model = Segmenter(_num_classes(cfg, sd), cfg["upsampler"], width=int(cfg["width"]),
                          stages=int(cfg.get("stages", 4)), decoder_width=decoder_width,
                          upsampler_options=dict(cfg.get("upsampler_options") or {}),
                          skip_fusion=cfg.get("skip_fusion", "concat"), head=cfg.get("head", "unet"))
    except (ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: describes no Segmenter this sapa can build ({e})") from e
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: its weights do not fit the {cfg['upsampler']} Segmenter its "
                              f"config describes ({describe_mismatch(e)})") from e
    model.config = cfg
    return model.to(device).eval()
