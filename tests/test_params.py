import pytest

from spann.errors import ParameterError
from spann.params import BuildParams, SearchParams


def test_round_trip():
    p = BuildParams(head_ratio=0.05, closure_eps=0.2)
    assert BuildParams.from_dict(p.to_dict()) == p
    s = SearchParams(max_postings=32, prune_eps=0.5)
    assert SearchParams.from_dict(s.to_dict()) == s
    assert s.replace(max_postings=8).max_postings == 8


def test_validation_messages():
    with pytest.raises(ParameterError, match=r"head_ratio must be in \(0, 0.5\], got 0.9"):
        BuildParams(head_ratio=0.9)
    with pytest.raises(ParameterError, match="assign_candidates"):
        BuildParams(replica_count=8, assign_candidates=4)
    with pytest.raises(ParameterError, match="unknown BuildParams parameter"):
        BuildParams.from_dict({"nope": 1})
    with pytest.raises(ParameterError, match="ef must be 0"):
        SearchParams(max_postings=64, ef=10)
    with pytest.raises(ValueError):  # ParameterError is also a ValueError
        SearchParams(max_postings=0)
