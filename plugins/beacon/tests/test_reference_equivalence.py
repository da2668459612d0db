"""tune's beacon forward against the plain reference in reference_beacon.py: every placement
(interleave / append) x mask (full-coverage / step-expansion), one-shot and token by token."""

from __future__ import annotations

import pytest
import torch
from tune.testing import tiny_model
from tune_plugin_beacon.model import BeaconConfig, attach, beacon_parameters

from .reference_beacon import reference_forward

WINDOW = 16
IDS = torch.randint(10, 250, (1, 3 * WINDOW + 7), generator=torch.Generator().manual_seed(11))


def beacon_model(pos: str, attn: str, ratio: int, sink: int):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        str(tiny_model("tiny-llama", {})), dtype=torch.float32
    )
    cfg = BeaconConfig(
        window=WINDOW, ratios=[ratio], inference_ratio=ratio, pos=pos, attn=attn, sink_size=sink
    )
    model = attach(base.eval(), cfg)
    generator = torch.Generator().manual_seed(ratio * 10 + sink)
    with torch.no_grad():  # beacon weights that differ from the base copies they start as
        for param in beacon_parameters(model).values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


CASES = [
    (pos, attn, ratio, sink)
    for pos in ("interleave", "append")
    for attn in ("full-coverage", "step-expansion")
    for ratio, sink in ((2, 0), (4, 1))
]


@pytest.mark.parametrize(("pos", "attn", "ratio", "sink"), CASES)
def test_one_shot_and_token_by_token_match_the_reference(pos, attn, ratio, sink):
    model = beacon_model(pos, attn, ratio, sink)
    expected = reference_forward(model, IDS, ratio)
    with torch.no_grad():
        one_shot = model(input_ids=IDS)
        prompt = 21  # mid-window: the rest arrives one token at a time
        out = model(input_ids=IDS[:, :prompt])
        pieces, state = [out.logits], out.beacon_state
        for t in range(prompt, IDS.shape[1]):
            out = model(input_ids=IDS[:, t : t + 1], beacon_state=state)
            pieces.append(out.logits)
            state = out.beacon_state
    streamed = torch.cat(pieces, dim=1)
    assert (one_shot.logits - expected["logits"]).abs().max() < 1e-5
    assert (streamed - expected["logits"]).abs().max() < 1e-5
    for state in (one_shot.beacon_state, out.beacon_state):
        assert state.memory_len() == expected["memory_len"]
        assert state.max_position == expected["max_position"]
