import math

from finetune.config import SpikeGuardSection
from finetune.train.spike_judge import SpikeJudge


def test_judge_flags_non_finite_and_large_losses_against_the_accepted_median():
    judge = SpikeJudge(SpikeGuardSection(factor=4.0, window=5, max_spikes=2))
    assert judge.is_spike(2.0, 1.0) == (False, None)  # the first step is the first reference
    assert judge.is_spike(2.2, 1.0)[0] is False
    assert judge.is_spike(9.0, 1.0) == (True, 2.1)  # > 4 x median(2.0, 2.2)
    assert judge.is_spike(math.nan, 1.0)[0] and judge.is_spike(2.0, math.inf)[0]
    assert judge.median() == 2.1, "spikes never enter the reference"


def test_judge_counts_spikes_in_a_sliding_window():
    judge = SpikeJudge(SpikeGuardSection(window=5, max_spikes=2))
    assert judge.record_spike(1) is False
    assert judge.record_spike(7) is False  # step 1 has left the 5-step window
    assert judge.record_spike(9) is True


def test_judge_calls_a_loss_pinned_at_uniform_with_a_vanished_gradient_a_collapse():
    uniform = math.log(261)
    judge = SpikeJudge(SpikeGuardSection(), uniform_loss=uniform)
    for loss, grad in [(5.80, 1.3), (5.89, 1.4), (5.33, 10.2)]:  # the quickstart at lr=1000, measured
        assert judge.verdict(loss, grad)[0] is None
    assert judge.verdict(uniform + 1e-6, 0.0)[0] == "collapse"
    assert judge.verdict(uniform, 1.2)[0] is None, "a model that still learns may pass through ln(vocab)"
    assert judge.verdict(2.0, 1.3)[0] is None and not judge.at_uniform(2.0)


def test_judge_calls_an_exploding_gradient_norm_a_spike():
    judge = SpikeJudge(SpikeGuardSection())
    for grad in (1.0, 2.0, 1.5):
        assert judge.verdict(3.0, grad)[0] is None
    assert judge.verdict(3.0, 20.0)[0] is None, "10x swings are normal"
    assert judge.verdict(3.0, 200.0)[0] == "spike"  # > 100 x the median accepted norm (1.75)
    assert judge.grad_norms[-1] == 20.0, "spikes never enter the reference"


def test_a_preference_loss_below_ln2_is_never_a_spike():
    """DPO's loss heads for 0: 4x a median of 0.01 is noise. Above ln 2 (no better than the reference) it counts."""
    judge = SpikeJudge(SpikeGuardSection(factor=4.0), floor=math.log(2))
    for loss in (0.02, 0.01, 0.012, 0.011):
        assert judge.verdict(loss, 1.0)[0] is None
    assert judge.verdict(0.5, 1.0)[0] is None  # 40x the median, still better than the reference
    assert judge.verdict(3.0, 1.0)[0] == "spike"
    assert judge.verdict(float("nan"), 1.0)[0] == "spike"
