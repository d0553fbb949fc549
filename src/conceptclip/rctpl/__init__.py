"""RC-TPL's text-only pipeline: reports -> knowledge-injected texts and labels (`corpus`), text
features standing in for images and the training run (`train`), zero-shot classification and
report retrieval (`evaluate`), grounding against boxes or masks (`grounding`), and the
`conceptclip rctpl` commands (`cli`). The method itself is `conceptclip.methods.rctpl`."""
