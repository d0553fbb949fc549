"""Point 5: two processes computing the same feature-cache entry at once serialise on its file lock
(one computes, the other reads) and get identical, valid features; a results folder is never
overwritten unless asked, from Python or from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conceptclip.engine.run import prepare_run_dir
from conceptclip.errors import ConfigError
from conceptclip.io import load_tensors

from _helpers import REPO, cli

CACHE_SCRIPT = textwrap.dedent("""
    import json, sys, time, torch
    from pathlib import Path
    from conceptclip.data import FeatureCache, from_folder
    data, cache_root, log, out = sys.argv[1:5]
    ds = from_folder(data)
    def preprocess(images):
        return torch.stack([torch.tensor(list(im.resize((8, 8)).getdata()), dtype=torch.float32).T.reshape(3, 8, 8)
                            for im in images]) / 255
    def encode(pixels):
        with open(log, "a") as fh:
            fh.write("batch\\n")
        time.sleep(0.3)  # slow enough that the two processes overlap
        return {"global": pixels.mean(dim=(2, 3)), "patches": pixels.flatten(2).transpose(1, 2)}
    Path(out + ".ready").touch()
    while not Path(out).with_name("go").exists():
        time.sleep(0.01)
    cache = FeatureCache(cache_root)
    feats = cache.get_or_compute(("fake-encoder", ds.fingerprint()), ds.samples, encode, preprocess, batch_size=8)
    torch.save(feats, out)
    print(json.dumps({"hits": cache.hits, "misses": cache.misses}))
""")


def test_two_processes_same_cache_key(tmp_path, image_folder):
    script = tmp_path / "cache.py"
    script.write_text(CACHE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    log = tmp_path / "encode.log"
    outs = [tmp_path / f"out{i}.pt" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(image_folder), str(tmp_path / "cache"), str(log), str(o)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for o in outs]
    import time

    t0 = time.time()
    while not all(Path(str(o) + ".ready").exists() for o in outs):  # both imported and waiting
        assert time.time() - t0 < 180 and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    (tmp_path / "go").touch()  # start both at once
    stats = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        stats.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted((s["hits"], s["misses"]) for s in stats) == [(0, 1), (1, 0)]  # one computed, one read
    assert log.read_text().count("batch") == 4  # 30 images / 8 per batch, encoded once, not twice
    a, b = (torch.load(o, weights_only=True) for o in outs)
    assert a.keys() == b.keys() == {"global", "patches"} and all(torch.equal(a[k], b[k]) for k in a)
    assert a["global"].shape == (30, 3) and a["patches"].shape == (30, 64, 3)
    entries = [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".safetensors"]
    assert len(entries) == 1 and not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]
    on_disk = load_tensors(entries[0])
    assert all(torch.equal(on_disk[k], a[k]) for k in a)


def _fill(folder: Path) -> dict[str, bytes]:
    """A finished results folder as conceptclip writes it (marker, config.json, ...)."""
    from conceptclip.engine.run import RUN_MARKER

    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_MARKER).write_text('{"kind": "run", "format": 1}')
    (folder / "config.json").write_text('{"method": {"method": "zeroshot"}}')
    (folder / "metrics.json").write_text('{"test": {"accuracy": 0.9}}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_results_folder_never_overwritten_unless_asked(tmp_path):
    run = tmp_path / "run"
    before = _fill(run)
    with pytest.raises(ConfigError, match="results folder already exists; pass --resume .* or --overwrite"):
        prepare_run_dir(run)
    with pytest.raises(ConfigError, match="already finished"):
        prepare_run_dir(run, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    (run / "metrics.json").unlink()  # an interrupted run: resume keeps every file
    kept = {p.name: p.read_bytes() for p in run.iterdir()}
    assert prepare_run_dir(run, resume=True) == run and {p.name: p.read_bytes() for p in run.iterdir()} == kept
    assert prepare_run_dir(run, overwrite=True) == run  # asked: replaced (a fresh folder holding its marker)
    assert [p.name for p in run.iterdir()] == [".conceptclip-run"]
    other = tmp_path / "other"  # a folder conceptclip did not make is never replaced
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a conceptclip run folder"):
        prepare_run_dir(other, overwrite=True)
    assert [p.name for p in other.iterdir()] == ["config.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_run_dir(empty) == empty  # an empty folder is not a run


@pytest.mark.slow
def test_cli_refuses_to_overwrite_a_results_folder(tmp_path, image_folder, one_line):
    run = tmp_path / "run"
    before = _fill(run)
    r = cli("train", "-m", "zeroshot", "--backbone", "tiny-clip", "--dataset", str(image_folder), "--shots", "2",
            "-o", str(run))
    one_line(r, "results folder already exists", str(run))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
