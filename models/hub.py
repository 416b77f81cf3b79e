"""The Hugging Face hub, asked quickly: offline machines get a clear error in seconds, not after
a minute of download retries."""

from __future__ import annotations

import functools
import os

from edgevit.errors import ModelError

__all__ = ["HUB_URL", "hub_reachable", "require_hub"]

HUB_URL = "https://huggingface.co/api/models/timm/mobilevit_xxs.cvnets_in1k"
_OFF = ("", "0", "false", "False", "no")


@functools.lru_cache(maxsize=4)
def _probe(timeout: float) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(HUB_URL, timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any network failure means offline
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the Hugging Face hub answers within ``timeout`` seconds; False at once when
    ``HF_HUB_OFFLINE`` is set. The answer is remembered for the process."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in _OFF:
        return False
    return _probe(float(timeout))


def _cached(repo_id: str, filenames: tuple[str, ...]) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def require_hub(repo_id: str, what: str, fix: str,
                cached_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin", "config.json")) -> None:
    """Raise :class:`ModelError` naming ``fix`` when ``repo_id`` is neither in the local hub cache
    nor reachable online (checked within 3 s)."""
    if _cached(repo_id, cached_files) or hub_reachable():
        return
    raise ModelError(f"cannot download {what} from the Hugging Face hub ({repo_id}): the hub is not reachable "
                     f"(offline?) and nothing is cached. {fix}")
