"""One probe per domain (the official DomainEstimatorBank): each fitted on its own rows only, rows routed by
domain (unknown ones to `other`), a domain below min_fit_rows left unfitted, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poise_verl.core.buffer import ProbeReplayBuffer
from poise_verl.core.domain_probes import DomainProbes
from poise_verl.core.probe import PCARidgeProbe

CAPACITY = {"math": 400, "code": 400, "other": 400}


def make_probe():
    return PCARidgeProbe(prompt_components=4, response_components=4, seed=0, feature_order="official", alpha=1.0)


def rows(domain_sign, count, seed):
    """Features with one signal direction whose effect on the target has the domain's sign."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(count, generator=generator)
    prompt = torch.randn(count, 6, generator=generator) * 0.1 + latent[:, None]
    response = torch.randn(count, 6, generator=generator) * 0.1
    scalar = torch.zeros(count, 1)
    targets = torch.sigmoid(domain_sign * 3 * latent)
    return prompt, response, scalar, targets


def fill(buffer, domain, sign, count, seed):
    prompt, response, scalar, targets = rows(sign, count, seed)
    uids = np.array([f"{domain}{i // 2}" for i in range(count)], dtype=object)
    buffer.add_groups(prompt, response, scalar, targets, uids, [domain] * count)


def test_each_domain_fits_on_its_own_rows_and_routes_by_domain():
    buffer = ProbeReplayBuffer(CAPACITY)
    fill(buffer, "math", +1, 200, 0)
    fill(buffer, "code", -1, 200, 1)  # the opposite reward rule
    probes = DomainProbes(list(CAPACITY), make_probe, min_fit_rows=50)
    metrics = probes.refit(buffer.dataset())
    assert metrics["math"]["refit"] == metrics["code"]["refit"] == 1.0 and metrics["other"]["refit"] == 0.0
    assert probes.fitted_domains() == ["math", "code"]

    # Each domain's probe is the probe fitted on that domain's rows alone.
    alone = make_probe()
    math = buffer.dataset(["math"])
    alone.fit(math.prompt_feats, math.response_feats, math.scalar_feats, math.targets)
    prompt, response, scalar, _ = rows(+1, 20, 5)
    predictions, fitted = probes.predict(prompt, response, scalar, ["math"] * 20)
    assert fitted.all()
    torch.testing.assert_close(predictions, alone.predict(prompt, response, scalar))

    # The same features score oppositely under the two domains' probes; `other` (and unknown domains
    # routed to it) are unfitted.
    domains = ["math"] * 10 + ["code"] * 10
    twice = [torch.cat([block[:10], block[:10]]) for block in (prompt, response, scalar)]
    mixed, fitted = probes.predict(*twice, domains)
    assert np.corrcoef(mixed[:10], mixed[10:])[0, 1] < -0.9
    _, fitted = probes.predict(prompt[:2], response[:2], scalar[:2], ["other", "chemistry"])
    assert not fitted.any()
    assert probes.route(["chemistry", "math"]) == ["other", "math"]


def test_domain_below_min_fit_rows_stays_unfitted_until_it_has_them():
    buffer = ProbeReplayBuffer(CAPACITY)
    fill(buffer, "math", +1, 100, 0)
    fill(buffer, "code", -1, 10, 1)
    probes = DomainProbes(list(CAPACITY), make_probe, min_fit_rows=50)
    metrics = probes.refit(buffer.dataset())
    assert (metrics["code"]["rows"], metrics["code"]["refit"], metrics["code"]["fitted"]) == (10.0, 0.0, 0.0)
    fill(buffer, "code", -1, 60, 2)
    assert probes.refit(buffer.dataset())["code"]["fitted"] == 1.0


def test_state_round_trip_and_old_state_is_refused():
    buffer = ProbeReplayBuffer(CAPACITY)
    fill(buffer, "math", +1, 100, 0)
    probes = DomainProbes(list(CAPACITY), make_probe, min_fit_rows=50)
    probes.refit(buffer.dataset())
    restored = DomainProbes(list(CAPACITY), make_probe, min_fit_rows=50)
    restored.load_state_dict(probes.state_dict())
    prompt, response, scalar, _ = rows(+1, 8, 3)
    assert torch.equal(
        restored.predict(prompt, response, scalar, ["math"] * 8)[0],
        probes.predict(prompt, response, scalar, ["math"] * 8)[0],
    )
    assert restored.num_fits == probes.num_fits
    with pytest.raises(ValueError, match="single probe"):
        restored.load_state_dict(make_probe().state_dict())
    with pytest.raises(ValueError, match="fallback"):
        DomainProbes(["math"], make_probe, 2)
