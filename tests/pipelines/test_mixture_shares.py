"""domain_weights set each domain's share of the samples; the report shows requested and realised shares."""

from __future__ import annotations

from collections import Counter

import pytest

from pipelines import load_corpus_config
from pipelines.report import shares
from pipelines.synth import get_task, resolve_mixture


def domain_shares(mixture) -> dict[str, float]:
    total = sum(w for _, w in mixture)
    out: Counter = Counter()
    for name, w in mixture:
        out[get_task(name).domain] += w / total
    return dict(out)


def test_balanced_domains_get_equal_shares_however_many_tasks_each_has():
    mix = resolve_mixture(load_corpus_config("omnilv_512"))  # restoration has far more plugins, and realesrgan ×8
    assert domain_shares(mix) == pytest.approx({d: 0.25 for d in ("restoration", "enhancement", "dense",
                                                                  "stylization")})
    weights = dict(mix)  # inside a domain the task weights still split it: realesrgan is 8× a restoration plugin
    assert weights["realesrgan"] == pytest.approx(8 * weights["gaussian_noise"])


def test_uneven_domain_weights_and_none_at_all():
    cfg = load_corpus_config("omnilv_512", ["mixture.domain_weights={restoration: 2, enhancement: 1, dense: 1, "
                                            "stylization: 0}"])
    assert domain_shares(resolve_mixture(cfg)) == pytest.approx({"restoration": 0.5, "enhancement": 0.25,
                                                                 "dense": 0.25})
    plain = load_corpus_config("quickstart")  # no domain_weights: the task weights alone, as written
    assert dict(resolve_mixture(plain))["realesrgan"] == 4.0


def test_report_shares_compare_request_and_count():
    table = shares([["gaussian_noise", 1.0], ["canny", 3.0]], Counter(gaussian_noise=1, canny=1),
                   Counter(restoration=1, dense=1))
    assert table["domains"] == {"dense": {"requested": 0.75, "realised": 0.5},
                                "restoration": {"requested": 0.25, "realised": 0.5}}
