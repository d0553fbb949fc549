"""The local browser demo (`conceptclip serve`): a FastAPI app over one trained run. FastAPI and
uvicorn come with the `web` extra and are imported only when the app is created."""
