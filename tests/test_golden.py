"""The same numbers before and after a change that only moves code: every preset's scores,
threshold, map statistics and fitted tensors on fixed generated parts equal
tests/golden/golden.json, and a detector saved before loads and scores as it did
(tests/golden/make_golden.py wrote both; rerun it only for a change meant to move a number)."""

import json
from pathlib import Path

import pytest
import torch

import mafr
from tests.golden import make_golden

GOLDEN = json.loads((Path(__file__).parent / "golden" / "golden.json").read_text())


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(make_golden.CONFIGS))
def test_the_numbers_are_the_recorded_ones(name, one_thread):
    now, _ = make_golden.record(name)
    assert now["threshold"] == GOLDEN[name]["threshold"]
    assert now["results"] == GOLDEN[name]["results"]
    changed = sorted(k for k in GOLDEN[name]["tensors"] if now["tensors"].get(k) != GOLDEN[name]["tensors"][k])
    assert set(now["tensors"]) == set(GOLDEN[name]["tensors"]) and not changed, changed


def test_a_detector_saved_before_loads_and_scores_as_it_did(one_thread):
    torch.set_num_threads(1)
    det = mafr.MAFRDetector.from_pretrained(Path(__file__).parent / "golden" / "offline_saved", device="cpu")
    tests = (make_golden.parts("offline", [50]) + make_golden.parts("offline", [51], "hole")
             + make_golden.parts("offline", [52], "stain"))
    for part, want in zip(tests, GOLDEN["offline"]["results"]):
        res = det.predict(part.rgb, part.xyz)
        assert (res.score, res.is_anomalous) == (want["score"], want["is_anomalous"])
        assert float(res.anomaly_map.astype("float64").sum()) == want["anomaly_map_sum"]
