"""RC-TPL in one place: the method (`method`, registered as "rctpl"), reports -> knowledge-injected
texts and labels (`corpus`), text features standing in for images and the training run through the
engine's results-folder writer (`train`), zero-shot classification and report retrieval
(`evaluate`), grounding against boxes or masks (`grounding`), and the `conceptclip rctpl` commands
(`cli`). A vertical slice: each module sits at its own layer (tools/layers.py)."""
