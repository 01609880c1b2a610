"""The interactive explorer (Gradio; optional extra ``app``).

``shortcut-detect app`` calls :func:`run_app`. Importing this package does not import
Gradio: :func:`build_app` and :func:`run_app` do, and say how to install it when missing.
The explorer's logic (:mod:`shortcut_detect.app.explorer`, :mod:`shortcut_detect.app.callbacks`)
runs without Gradio.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shortcut_detect.app.audit_browser import AuditBrowser
from shortcut_detect.app.explorer import Explorer
from shortcut_detect.app.inputs import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    ExplorerInputError,
)
from shortcut_detect.app.models import demo_explorer_models, explorer_model_from_loaded
from shortcut_detect.app.sources import DataSource, DemoSource
from shortcut_detect.app.volume_explorer import VolumeExplorer, make_volume_explorer
from shortcut_detect.models import load_model

if TYPE_CHECKING:
    import gradio

__all__ = [
    "AUTH_ENV",
    "Explorer",
    "ExplorerInputError",
    "RunningApp",
    "build_app",
    "free_port",
    "make_explorer",
    "resolve_auth",
    "run_app",
    "start_app",
]

LOCALHOST = "127.0.0.1"
LOOPBACK_HOSTS = (LOCALHOST, "localhost", "::1")
#: Environment variable holding ``USER:PASS`` for the app's login (instead of ``auth=``).
AUTH_ENV = "SHORTCUT_DETECT_AUTH"


def _parse_auth(text: str, source: str) -> tuple[str, str]:
    user, separator, password = text.partition(":")
    if not separator or not user or not password:
        raise ExplorerInputError(
            f"{source} must be USER:PASS (a user name, a colon, a password), got "
            f"{'an empty value' if not text else 'no colon' if not separator else 'an empty part'}"
        )
    return user, password


def resolve_auth(
    host: str, auth: str | tuple[str, str] | None = None, no_auth: bool = False
) -> tuple[str, str] | None:
    """The ``(user, password)`` the app asks for, or ``None`` for no login.

    ``auth`` (``"USER:PASS"`` or a pair) wins, then the ``SHORTCUT_DETECT_AUTH`` environment
    variable. Served beyond this machine (``host`` not a loopback address), the app needs
    one of them unless ``no_auth=True`` says to serve without a password.

    Raises
    ------
    ExplorerInputError
        A malformed ``USER:PASS``, or an exposed host without a password or ``no_auth=True``.
    """
    if isinstance(auth, tuple):
        return _parse_auth(":".join(auth), "auth=")
    if auth is not None:
        return _parse_auth(auth, "auth=")
    if os.environ.get(AUTH_ENV) is not None:
        return _parse_auth(os.environ[AUTH_ENV], AUTH_ENV)
    if host in LOOPBACK_HOSTS or no_auth:
        return None
    raise ExplorerInputError(
        f"Serving on {host} exposes the page and the model to the network, so it needs a "
        f"password: give auth=USER:PASS (or set {AUTH_ENV}=USER:PASS), or no_auth=True to "
        "serve without one"
    )


def make_explorer(
    model: str | None = None,
    weights: str | Path | None = None,
    data: str | Path | None = None,
    audit: str | Path | None = None,
    classes: Sequence[str] | str | Path | None = None,
    layer: str | None = None,
    *,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    device: str | None = None,
    group_column: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    cache_size: int = 256,
    window: str | None = None,
    **load_options: Any,
) -> Explorer:
    """Load the model(s) once and the samples, for :func:`build_app`.

    With no ``model`` and no ``audit``, serves the built-in demo (its shortcut and clean
    models and its synthetic test set; works offline). ``data`` adds an image folder or
    manifest as the sample set; ``audit`` an audit directory to browse (its model and data
    are used unless ``model`` / ``data`` are given). A 3-D model without an audit gives a
    :class:`~shortcut_detect.app.volume_explorer.VolumeExplorer` over the volumes of
    ``data`` (and uploads), read with the intensity ``window`` (``"auto"``, ``"full"``,
    ``"CENTER,WIDTH"``; default auto). ``load_options`` (``preset``,
    ``resize``, ``crop``, ``mean``, ``std``) go to :func:`shortcut_detect.models.load_model`.

    Raises
    ------
    ValueError
        (:class:`ExplorerInputError`, ``ModelLoadError``, ``ManifestError``) for a model,
        data or audit that cannot be used; the message says why.
    """
    browser = None
    if audit is not None:
        browser = AuditBrowser.open(audit, max_pixels=max_pixels)
        if model is None:
            model, weights = browser.model_spec, browser.weights
            classes = classes if classes is not None else browser.class_names or None
            load_options = {**browser.load_options, **load_options}
        if data is None and browser.input_size is not None:
            # A model fed images at their own size learns it from the audit, whose images
            # all had this size.
            load_options.setdefault("image_size", browser.input_size)
        layer = layer if layer is not None else browser.layer
    if model is None or (str(model) == "demo" and weights is None):
        models = demo_explorer_models()
    else:
        loaded = load_model(
            model,
            weights=weights,
            num_classes=num_classes,
            classes=classes,
            trust_pickle=trust_pickle,
            device=device,
            **load_options,
        )
        if loaded.is_torchscript:
            raise ExplorerInputError(
                f"--model {model} is TorchScript, which cannot take the layer hooks heatmaps "
                "need; give the architecture (torchvision:NAME or package.module:factory) and "
                "the weights as a state dict."
            )
        if loaded.spatial_dims == 3:
            if browser is None:
                return make_volume_explorer(
                    loaded,
                    data,
                    layer=layer,
                    group_column=group_column,
                    max_pixels=max_pixels,
                    max_upload_bytes=max_upload_bytes,
                    cache_size=cache_size,
                    window=window,
                )
            # A 3-D audit: its volumes are browsed in the audit tab (plane and slice); the
            # explorer's own 2-D tabs keep the demo.
            models, data, browser.source, layer = demo_explorer_models(), None, None, None
        else:
            models = [explorer_model_from_loaded(loaded)]
    if window is not None:
        # Only the volume explorer (returned above) reads files with a chosen window.
        raise ExplorerInputError(
            "window= (--window) is for the volumes of a 3-D model explored with --model; 2-D "
            "images are read with their own window and an audit with the audit's"
        )
    if layer is not None:
        for explorer_model in models:
            explorer_model.default_layer = layer
    if data is not None:
        # Labels only caption the samples here, so the data's own names are kept.
        source = DataSource(data, group_column=group_column, max_pixels=max_pixels)
    elif browser is not None and browser.source is not None:
        source = browser.source
    else:
        source = DemoSource()
    explorer = Explorer(
        models,
        source,
        cache_size=cache_size,
        max_pixels=max_pixels,
        max_upload_bytes=max_upload_bytes,
    )
    explorer.audit = browser
    if browser is not None and browser.method:
        explorer.default_method = browser.method
    for name in explorer.model_names:
        explorer.layer_choices(name)  # fail at start-up, not on the first click
    return explorer


def _import_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise ImportError(
            "The explorer needs Gradio: pip install 'shortcut-detect[app]'"
        ) from error
    return gradio


def build_app(
    model: str | None = None,
    weights: str | Path | None = None,
    data: str | Path | None = None,
    audit: str | Path | None = None,
    classes: Sequence[str] | str | Path | None = None,
    layer: str | None = None,
    *,
    explorer: Explorer | None = None,
    **options: Any,
) -> gradio.Blocks:
    """The Gradio page (not launched). ``explorer`` skips loading (e.g. in tests).

    Parameters are those of :func:`make_explorer`; ``options`` are passed on to it.
    """
    _import_gradio()
    # The page modules import Gradio (an optional extra) at import time.
    from shortcut_detect.app.ui import create_blocks
    from shortcut_detect.app.volume_ui import create_volume_blocks

    if explorer is None:
        explorer = make_explorer(model, weights, data, audit, classes, layer, **options)
    if isinstance(explorer, VolumeExplorer):
        blocks = create_volume_blocks(explorer)
    else:
        blocks = create_blocks(explorer)
    blocks.explorer = explorer  # type: ignore[attr-defined]
    return blocks


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningApp:
    """A served explorer: its page, address and a way to stop it."""

    blocks: gradio.Blocks
    url: str

    @property
    def explorer(self) -> Explorer:
        return self.blocks.explorer  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop the server (idempotent)."""
        self.blocks.close(verbose=False)


def start_app(
    model: str | None = None,
    weights: str | Path | None = None,
    data: str | Path | None = None,
    audit: str | Path | None = None,
    host: str = LOCALHOST,
    port: int = 7860,
    classes: Sequence[str] | str | Path | None = None,
    layer: str | None = None,
    *,
    explorer: Explorer | None = None,
    quiet: bool = True,
    auth: tuple[str, str] | None = None,
    **options: Any,
) -> RunningApp:
    """Build the page and serve it in a background thread; returns at once.

    Parameters are those of :func:`run_app`; ``explorer`` skips loading; ``auth`` is the
    ``(user, password)`` of the login page (``None``: no login; see :func:`resolve_auth`).
    """
    blocks = build_app(model, weights, data, audit, classes, layer, explorer=explorer, **options)
    served: Explorer = blocks.explorer  # type: ignore[attr-defined]
    # A few requests at once, so cached results do not wait behind a computation.
    blocks.queue(default_concurrency_limit=4)
    _, local_url, _ = blocks.launch(
        server_name=host,
        server_port=int(port),
        prevent_thread_lock=True,
        share=False,
        quiet=quiet,
        show_error=True,
        ssr_mode=False,
        max_file_size=served.max_upload_bytes,
        footer_links=[],
        auth=auth,
    )
    return RunningApp(blocks, local_url or f"http://{host}:{port}/")


def run_app(
    model: str | None = None,
    weights: str | Path | None = None,
    data: str | Path | None = None,
    audit: str | Path | None = None,
    host: str = LOCALHOST,
    port: int = 7860,
    classes: Sequence[str] | str | Path | None = None,
    layer: str | None = None,
    *,
    block: bool = True,
    auth: str | tuple[str, str] | None = None,
    no_auth: bool = False,
    **options: Any,
) -> str:
    """Load the model(s), build the page, serve it on ``host:port`` and print the address.

    Binds to 127.0.0.1 unless ``host`` says otherwise (``0.0.0.0`` exposes the page, and
    the model, to the network: then a password is required, ``auth="USER:PASS"`` or the
    ``SHORTCUT_DETECT_AUTH`` environment variable, unless ``no_auth=True``). ``block=False``
    returns after start-up (the server keeps running in a thread). Other ``options`` go to
    :func:`make_explorer`.

    Returns
    -------
    str
        The address the page is served at.
    """
    _import_gradio()
    login = resolve_auth(host, auth, no_auth)  # before loading: a refusal comes at once
    if login is not None:
        print(f"Login required: user {login[0]!r} and its password.", file=sys.stderr)
    elif host not in LOOPBACK_HOSTS:
        print(
            f"Warning: serving on {host} without a password (no_auth); anyone who can reach "
            "this machine can use the page.",
            file=sys.stderr,
        )
    print("Loading the model(s)...", file=sys.stderr, flush=True)
    running = start_app(
        model, weights, data, audit, host, port, classes, layer, auth=login, **options
    )
    print(f"shortcut-detect explorer running at {running.url} (Ctrl+C to stop)", flush=True)
    if block:
        try:
            running.blocks.block_thread()
        finally:
            running.close()
    return running.url
