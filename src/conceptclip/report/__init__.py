"""User-facing drawings and pages: overlays of explanation maps (`overlay`), the HTML report over
results folders (`build.build_report`, `conceptclip report`), and the single-image explanation
the report's cards and the browser demo share (`explainer.RunExplainer`).

Heavy parts (matplotlib, jinja2, torch models) are imported by the functions that need them."""
