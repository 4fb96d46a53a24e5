"""Golden tensors: the diffusion core reproduces the committed fixed-seed samples, guidance and loss exactly.

If a change to the core is meant to change the numbers, say why in the commit and regenerate the file with
``python tests/artifacts/make_golden.py``.
"""

import pytest
import torch
from safetensors.torch import load_file

from tests.artifacts import make_golden

REGENERATE = "regenerate with `python tests/artifacts/make_golden.py` only if the change is intended"


@pytest.fixture(scope="module")
def tensors():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the reductions run in one order, as when the file was written
    try:
        yield load_file(str(make_golden.GOLDEN_PATH)), make_golden.compute()
    finally:
        torch.set_num_threads(threads)


def test_golden_file_is_small():
    assert make_golden.GOLDEN_PATH.stat().st_size < 200_000


def test_the_same_tensors_are_computed(tensors):
    golden, fresh = tensors
    assert sorted(fresh) == sorted(golden), f"golden tensors added or removed: {REGENERATE}"


@pytest.mark.parametrize("family", ["net", "sample", "inpaint", "value_guided", "value_guided_mean_shift", "cfg",
                                    "cfg_one_call", "chain", "noised", "loss"])
def test_diffusion_core_matches_golden(tensors, family):
    golden, fresh = tensors
    keys = [k for k in golden if k.split("/")[0] == family]
    assert keys, family
    for key in keys:
        torch.testing.assert_close(
            fresh[key], golden[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}\n{REGENERATE}"
        )


def test_inpainted_entries_are_exact_in_the_golden_samples(tensors):
    golden, _ = tensors
    data = make_golden.inputs()
    A = make_golden.A
    for key in (k for k in golden if k.startswith(("inpaint/", "value_guided/", "value_guided_mean_shift/"))):
        assert torch.equal(golden[key][:, 0, A:], data["start"]), key
        assert torch.equal(golden[key][:, -1, A:], data["goal"]), key


def test_tolerance_catches_a_small_change(tensors):
    """A 2% change of the guide scale moves the guided sample beyond the tolerance the test uses."""
    golden, _ = tensors
    nets, data = make_golden.denoisers(), make_golden.inputs()
    shape = (make_golden.B, make_golden.H, make_golden.D)
    inpaint = make_golden.Inpaint.at_steps(shape, {0: data["start"], -1: data["goal"]}, slice(make_golden.A, None))
    guide = make_golden.ValueGuide(make_golden.value_net(), scale=0.51, n_guide_steps=2, t_stopgrad=1,
                                   inpaint=inpaint)
    sched = make_golden.schedulers("epsilon")["ddpm"]
    x = make_golden.sample(nets["unet"], sched, shape, cond=data["cond"], inpaint=inpaint, guide=guide,
                           generator=torch.Generator().manual_seed(make_golden.SAMPLE_SEED))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(x, golden["value_guided/eps/ddpm/unet"], rtol=1e-5, atol=1e-6)
